"""Plug-ins that consistency methods can switch on from their config (e.g. ``depmatch``)."""
