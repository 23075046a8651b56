"""SIP signalling: messages, SDP offer/answer, transactions, dialogs, transports, UAS.

No audio here; see `sip.api` for the interface to the SIP door.
"""
