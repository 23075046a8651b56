"""SIP signalling: messages, SDP offer/answer, transactions, dialogs, transports, a UAS. No audio."""
