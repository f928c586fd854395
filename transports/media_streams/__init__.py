"""Telephony media streams (Twilio, Telnyx): provider WebSockets as sessions."""
