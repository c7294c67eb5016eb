"""Listening sockets of a process tree, read from Linux /proc (network exposure and server tests)."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

#: /proc/net/tcp state codes (include/net/tcp_states.h): 0A = LISTEN; 07 = CLOSE, what an unconnected UDP socket shows.
TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"
NET_TABLES = {"tcp": TCP_LISTEN, "tcp6": TCP_LISTEN, "udp": UDP_UNCONNECTED, "udp6": UDP_UNCONNECTED}


@dataclass(frozen=True)
class Listener:
    """One listening socket of a process: protocol (tcp, tcp6, udp, udp6), local address and port, owner."""

    proto: str
    address: str
    port: int
    pid: int
    command: str

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback

    def __str__(self) -> str:
        return f"{self.proto} {self.address}:{self.port} (pid {self.pid} {self.command})"


def decode_address(hex_address: str) -> str:
    """``/proc/net`` local address (hex, 32-bit words in host order) -> text, e.g. ``0100007F`` -> 127.0.0.1."""
    raw = bytes.fromhex(hex_address)
    host_order = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    return str(ipaddress.ip_address(host_order))


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (from the parent pid in ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def listening_sockets(pids: list[int]) -> set[Listener]:
    """The listening TCP and bound unconnected UDP sockets held by ``pids`` (processes that vanish are skipped)."""
    found: set[Listener] = set()
    for pid in pids:
        base = PROC / str(pid)
        try:
            inodes = set()
            for fd in (base / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
            if not inodes:
                continue
            command = (base / "comm").read_text().strip()
            for table, state in NET_TABLES.items():
                for line in (base / "net" / table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == state and fields[9] in inodes:
                        address, port = fields[1].split(":")
                        found.add(Listener(table, decode_address(address), int(port, 16), pid, command))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found
