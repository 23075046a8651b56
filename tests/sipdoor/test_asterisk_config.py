"""Asterisk is not packaged here: check the snippets' syntax and cross-references instead.

The parser follows Asterisk's config format (`[section]` or `[section](template,...)`,
`(!)` marks a template, `key=value` / `key => value`, `;` comments, `same => n,...` continues
the previous extension) and fails on anything else, so a typo cannot pass unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.sipdoor.helpers import REPO

ASTERISK = REPO / "asterisk"
SECTION = re.compile(r"^\[([A-Za-z0-9_.+-]+)\](?:\(([!A-Za-z0-9_,.+-]*)\))?$")
OPTION = re.compile(r"^([A-Za-z0-9_]+)\s*(=>|=)\s*(.*)$")
PJSIP_TYPES = {"transport", "endpoint", "aor", "auth", "identify", "registration", "global"}
KNOWN_CODECS = {"ulaw", "alaw", "opus", "g722", "gsm", "all"}
DIALPLAN_LINE = re.compile(
    r"^(_?[0-9A-Za-z+*#.\[\]X!-]+),(\d+|n|hint)(\([a-z0-9_-]+\))?,([A-Za-z]+)\((.*)\)$"
)


@dataclass
class Section:
    name: str
    templates: list[str]
    is_template: bool
    options: list[tuple[str, str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return next((v for k, _, v in self.options if k == key), None)


def parse(path: Path) -> list[Section]:
    sections: list[Section] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if match := SECTION.match(line):
            parts = [p for p in (match.group(2) or "").split(",") if p]
            sections.append(Section(match.group(1), [p for p in parts if p != "!"], "!" in parts))
            continue
        match = OPTION.match(line)
        assert match, f"{path.name}:{number}: not a section or option: {raw!r}"
        assert sections, f"{path.name}:{number}: option before any section"
        sections[-1].options.append((match.group(1), match.group(2), match.group(3).strip()))
    return sections


def resolved(sections: list[Section], section: Section) -> dict[str, str]:
    """Options of a section with its templates' options underneath."""
    out: dict[str, str] = {}
    for name in section.templates:
        template = next(s for s in sections if s.name == name and s.is_template)
        out.update(resolved(sections, template))
    out.update({k: v for k, _, v in section.options})
    return out


def test_pjsip_conf_is_well_formed_and_consistent() -> None:
    sections = parse(ASTERISK / "pjsip.conf")
    objects: dict[tuple[str, str], dict[str, str]] = {}
    for section in sections:
        if section.is_template:
            continue
        options = resolved(sections, section)
        kind = options.get("type")
        assert kind in PJSIP_TYPES, f"[{section.name}] has type={kind}"
        assert (section.name, kind) not in objects, f"[{section.name}] {kind} defined twice"
        objects[(section.name, kind)] = options
        assert all(op == "=" for _, op, _ in section.options), f"[{section.name}] uses =>"
    endpoints = {n: o for (n, t), o in objects.items() if t == "endpoint"}
    assert {"voicebridge-g711", "voicebridge-opus"} <= set(endpoints)
    for name, options in endpoints.items():
        assert (options["transport"], "transport") in objects, name
        for aor in options["aors"].split(","):
            assert (aor, "aor") in objects, f"{name}: aor {aor} missing"
        if "auth" in options:
            assert (options["auth"], "auth") in objects
        codecs = set(options["allow"].split(","))
        assert codecs <= KNOWN_CODECS, codecs
        assert options["disallow"] == "all" and options["dtmf_mode"] == "rfc4733"
    assert "opus" in endpoints["voicebridge-opus"]["allow"].split(",")
    assert "opus" not in endpoints["voicebridge-g711"]["allow"].split(",")
    for (name, kind), options in objects.items():
        if kind == "aor" and "contact" in options:
            assert re.fullmatch(r"sip:[\w.-]+@[\w.-]+:\d+", options["contact"]), name
        if kind == "identify":
            assert (options["endpoint"], "endpoint") in objects


def test_extensions_conf_dials_the_bridge_endpoints() -> None:
    sections = parse(ASTERISK / "extensions.conf")
    endpoints = {s.name for s in parse(ASTERISK / "pjsip.conf") if s.get("type") == "endpoint"}
    endpoints |= {
        s.name for s in parse(ASTERISK / "pjsip.conf") if "voicebridge-common" in s.templates
    }
    contexts = {s.name for s in sections}
    dialled: dict[str, str] = {}
    for section in sections:
        current: str | None = None
        for key, op, value in section.options:
            if key == "include":
                assert value in contexts, f"include of unknown context {value}"
                continue
            assert key in ("exten", "same") and op == "=>", (key, op)
            if key == "same":
                assert current is not None, "same => before any exten =>"
                match = DIALPLAN_LINE.match(f"{current},{value}")
            else:
                match = DIALPLAN_LINE.match(value)
            assert match, f"[{section.name}] bad dialplan line: {value}"
            current = match.group(1)
            app, args = match.group(4), match.group(5)
            assert args.count("(") == args.count(")"), value
            if app == "Dial":
                target = args.split(",")[0]
                assert target.startswith("PJSIP/"), target
                endpoint = target.split("@")[-1] if "@" in target else target[6:]
                assert endpoint in endpoints, endpoint
                dialled[current] = endpoint
    assert dialled == {"7000": "voicebridge-g711", "7001": "voicebridge-opus"}
