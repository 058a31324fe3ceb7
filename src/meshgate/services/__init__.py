"""Registered HTTP services: their registrations, executed checks, TTLs and pools."""
