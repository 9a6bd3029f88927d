"""Operator commands that are not services: migrations, health pings."""
