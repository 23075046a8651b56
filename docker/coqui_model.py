"""Download a Coqui TTS model at image build time into the folder `bridge.services.tts_server` reads.

    python docker/coqui_model.py tts_models/en/ljspeech/vits /opt/coqui/vits

The bridge's Coqui engine never downloads: it loads `model_file.pth` and `config.json` from
`COQUI_MODEL_PATH`. Coqui's model manager stores its download under its own naming, so the
two files are copied to the fixed names here, and the build fails if either is missing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MODEL_NAMES = ("model_file.pth", "model.pth", "model_file.pth.tar")


def main(model: str, target: str) -> int:
    """Download `model` and copy its weights and config into `target`."""
    from TTS.utils.manage import ModelManager

    model_path, config_path, _ = ModelManager(progress_bar=False).download_model(model)
    found = Path(model_path)
    folder = found if found.is_dir() else found.parent
    if found.is_dir():
        found = next((folder / n for n in MODEL_NAMES if (folder / n).is_file()), folder)
    config = Path(config_path) if config_path else folder / "config.json"
    if not found.is_file() or not config.is_file():
        print(f"coqui_model: no weights or config.json for {model} in {folder}", file=sys.stderr)
        return 1
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found, out / "model_file.pth")
    shutil.copyfile(config, out / "config.json")
    print(f"coqui_model: {model} -> {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
