"""The composition root: the server (routing, health, readiness, drain), the `voice`
command line, dial-out and the static files of the widget. The only place that wires
transports to pipelines."""
