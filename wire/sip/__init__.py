"""SIP (RFC 3261) messages, headers, transactions, dialogs, digest auth and SDP
offer/answer, sans-I/O."""
