"""Listeners: binding sockets, handing accepted connections to their network filter."""
