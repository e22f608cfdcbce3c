"""``no_network()``: a block in which any attempt to reach the network fails the test.

    from network_guard import NetworkAttempt, no_network

    with no_network() as attempts:  # attempts: a list of "event host:port" strings, empty if all went well
        CLIPTextEncoder.from_pretrained(folder)

Built on Python's audit hooks (PEP 578): name look-ups (``socket.getaddrinfo``, ``gethostbyname``, ...) and
connections or datagrams on internet sockets raise :class:`NetworkAttempt` at the call, before anything leaves the
machine. Libraries that swallow the error (a best-effort request in ``try/except Exception``) do not hide it: every
attempt is recorded, and the block raises at its end if there was one. The guard covers every thread of the
process while a block is open. It cannot see sockets opened by native code that bypasses Python's socket module.

An audit hook cannot be removed, so this module installs one, once, that does nothing outside a block.
"""
import socket
import sys


class NetworkAttempt(AssertionError):
    """Something tried to reach the network inside ``no_network()``."""


# name look-ups: the host is the first argument
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
# (socket, address) events; only internet sockets count, a Unix socket stays on the machine
_SENDS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_INTERNET = (socket.AF_INET, socket.AF_INET6)

_blocks: list[list[str]] = []  # the attempts of each open block, innermost last


def _target(event: str, args: tuple) -> str | None:
    """The host an audit event reaches for, or None if the event is not a network attempt."""
    if event in _LOOKUPS:
        host = args[0]
        if event == "socket.getaddrinfo":
            return f"{host}:{args[1]}"
        return f"{host[0]}:{host[1]}" if event == "socket.getnameinfo" else str(host)
    if event in _SENDS:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) in _INTERNET and address is not None:
            return f"{address[0]}:{address[1]}"
        return None
    if event == "http.client.connect":  # (connection, host, port)
        return f"{args[1]}:{args[2]}"
    return None


def _hook(event: str, args: tuple) -> None:
    if not _blocks:  # every audit event of the process passes here: leave fast
        return
    target = _target(event, args)
    if target is None:
        return
    attempt = f"{event} {target}"
    for attempts in tuple(_blocks):
        attempts.append(attempt)
    raise NetworkAttempt(f"network attempt inside no_network(): {attempt}")


sys.addaudithook(_hook)


class no_network:
    """Context manager: fail on any network attempt inside the block (see the module's docstring)."""

    def __enter__(self) -> list[str]:
        self.attempts: list[str] = []
        _blocks.append(self.attempts)
        return self.attempts

    def __exit__(self, kind, error, traceback) -> bool:
        del _blocks[next(i for i, a in enumerate(_blocks) if a is self.attempts)]
        if self.attempts and not isinstance(error, NetworkAttempt):
            raise NetworkAttempt(f"{len(self.attempts)} network attempt(s) inside no_network(): "
                                 + ", ".join(self.attempts)) from error
        return False
