"""Network namespaces, net devices and the /proc/sys/net tables they register (fs/proc/proc_sysctl.c,
net/sysctl_net.c, net/ipv4/devinet.c, net/ipv6/addrconf.c, net/core/neighbour.c).

Each device registers four sysctl tables (ipv4/ipv6 conf and neigh) when it is registered with a
namespace, and unregisters them when it is deleted, renamed (unregister then register under the
new name) or moved to another namespace (unregister in the old, register in the new).  A dentry
or fd of /proc/sys is bound to one registration (a ctl_table_header): once it is unregistered,
sysctl_head_grab() fails and every use of it is ENOENT.

Which namespace /proc/sys/net shows is decided by the reader: sysctl_follow_link() resolves the
"net" directory in the reader's network namespace, and proc_sys_compare() refuses a cached
dentry of another namespace's set (sysctl_is_seen), so a lookup always sees the reader's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

PROTOCOLS = ("ipv4", "ipv6")
TABLE_DIRS = ("conf", "neigh")
# Leaves whose O_RDWR open and integer write the model knows (0644 in devinet and addrconf).
WRITABLE_LEAVES = frozenset({"forwarding"})
# ctl_table modes of the leaves the generator opens: forwarding (devinet_sysctl's
# DEVINET_SYSCTL_COMPLEX_ENTRY, addrconf_sysctl), ipv6 mtu (addrconf_sysctl) and retrans_time
# (neigh_sysctl_template, NEIGH_SYSCTL_USERHZ_JIFFIES_ENTRY): all 0644.
LEAF_MODES = {"forwarding": 0o644, "mtu": 0o644, "retrans_time": 0o644}
# The value of conf/<entry>/forwarding as the model knows it: "0", "1", or None (unknown).
# A fresh namespace's ipv6 all/default values are the compiled ones (addrconf_init_net: with
# net.core.devconf_inherit_init_net at its default 0, ipv6 uses ipv6_devconf/ipv6_devconf_dflt,
# forwarding 0); its ipv4 ones are copied from init_net (devinet_init_net, same sysctl), whose
# values the model does not see.  A device copies its namespace's default when it registers
# (inetdev_init, ipv6_add_dev) -- at creation and on a move, which destroys and re-creates its
# in_device/inet6_dev; a rename keeps them.
FRESH_FORWARDING = {"ipv4": None, "ipv6": "0"}
# Other leaves the generator reads, whose values are kernel constants as long as nothing writes
# them (no op changes an MTU or a neighbour parameter): ipv6 conf/<dev>/mtu is the device's MTU
# when its inet6_dev is made (ipv6_add_dev: cnf.mtu6 = dev->mtu; loopback_setup: 64 KiB, dummy and
# veth: ether_setup, ETH_DATA_LEN), conf/{all,default}/mtu the compiled IPV6_MIN_MTU
# (ipv6_devconf{,_dflt}); ipv4 neigh/<dev>/retrans_time is arp_tbl's 1 * HZ shown in USER_HZ
# (NEIGH_SYSCTL_USERHZ_JIFFIES_ENTRY).  ipv6 neigh/<dev>/retrans_time is shown in raw jiffies
# (ndisc_ifinfo_sysctl_change -> neigh_proc_dointvec), so it depends on CONFIG_HZ: not modelled.
DEVICE_MTU = {"loopback": "65536", "dummy": "1500", "veth": "1500"}
IPV6_MIN_MTU = "1280"
ARP_RETRANS_TIME_USER_HZ = "100"
MAX_MAYBE = 3        # more uncertain entries than this in one listing: the listing is unmodelled


@dataclass(eq=False)
class Registration:
    """One ctl_table_header: alive until unregistered; 'maybe' while a dying namespace's
    cleanup_net (asynchronous) may or may not have unregistered it yet."""
    state: str = "alive"          # alive | maybe | dead


@dataclass(eq=False)
class NetDevice:
    name: str
    kind: str                     # loopback | dummy | veth
    netns: "NetNamespace"
    up: bool = False
    peer: "NetDevice | None" = None
    tables: dict = field(default_factory=dict)    # (proto, "conf"|"neigh") -> Registration
    uncertain: bool = False       # may already be gone (peer of a veth in a dying namespace)
    forwarding: dict = field(default_factory=dict)  # proto -> "0" | "1" | None

    def register(self, keep_conf: bool = False):
        self.tables = {(proto, table): Registration() for proto in PROTOCOLS for table in TABLE_DIRS}
        if not keep_conf:
            self.forwarding = {proto: self.netns.forwarding.get((proto, "default")) for proto in PROTOCOLS}
        self.netns.sync_dirs()

    def unregister(self):
        for registration in self.tables.values():
            registration.state = "dead"
        self.netns.sync_dirs()


@dataclass(eq=False)
class NetNamespace:
    devices: dict = field(default_factory=dict)   # name -> NetDevice
    # net/ipv{4,6}/conf/{all,default}: per-namespace tables, gone only with the namespace
    fixed: dict = field(default_factory=dict)     # (proto, entry) -> Registration
    # the conf and neigh directories are ctl_dirs of their own: drop_sysctl_table() frees one
    # with its last entry, and the next registration below it makes a new one
    dirs: dict = field(default_factory=dict)      # (proto, "conf"|"neigh") -> Registration
    dying: bool = False
    forwarding: dict = field(default_factory=dict)  # (proto, "all"|"default") -> "0" | "1" | None

    def sync_dirs(self):
        for proto in PROTOCOLS:
            for table in TABLE_DIRS:
                entries = [reg for (p, _), reg in self.fixed.items() if p == proto and table == "conf"]
                entries += [device.tables[(proto, table)] for device in self.devices.values() if device.tables]
                used = any(reg.state != "dead" for reg in entries)
                current = self.dirs.get((proto, table))
                if used and (current is None or current.state == "dead"):
                    self.dirs[(proto, table)] = Registration()
                elif not used and current is not None:
                    current.state = "dead"

    @classmethod
    def create(cls, profile) -> "NetNamespace":
        netns = cls()
        netns.forwarding = {(proto, entry): FRESH_FORWARDING[proto] for proto in PROTOCOLS
                            for entry in ("all", "default")}
        for proto in PROTOCOLS:
            for entry in profile.sysctl.get(f"{proto}_conf", {}):
                if entry != "lo":
                    netns.fixed[(proto, entry)] = Registration()
        lo = NetDevice("lo", "loopback", netns)
        netns.devices["lo"] = lo
        lo.register()
        return netns

    def device_of(self, registration: Registration) -> "NetDevice | None":
        """The device a live table registration belongs to (a held fd is bound to it)."""
        return next((device for device in self.devices.values()
                     if any(reg is registration for reg in device.tables.values())), None)

    def read_forwarding(self, ref: "CtlRef") -> str | None:
        if ref.entry in ("all", "default"):
            return self.forwarding.get((ref.proto, ref.entry))
        device = self.device_of(ref.registration)
        return None if device is None or device.uncertain else device.forwarding.get(ref.proto)

    def read_constant(self, ref: "CtlRef") -> str | None:
        if ref.proto == "ipv6" and ref.tabledir == "conf" and ref.leaf == "mtu":
            if ref.entry in ("all", "default"):
                return IPV6_MIN_MTU
            device = self.device_of(ref.registration)
            return None if device is None or device.uncertain else DEVICE_MTU.get(device.kind)
        if ref.proto == "ipv4" and ref.tabledir == "neigh" and ref.leaf == "retrans_time":
            device = self.device_of(ref.registration)
            return None if device is None or device.uncertain else ARP_RETRANS_TIME_USER_HZ
        return None

    def write_forwarding(self, ref: "CtlRef", value: str | None):
        """A write of `value` (None: unknown) to conf/<entry>/forwarding, with its side effects.
        ipv4 (devinet_sysctl_forward): only a change of conf/all reaches inet_forward_change,
        which sets conf/default and every device to the new value.  ipv6
        (addrconf_sysctl_forward -> addrconf_fixup_forwarding): a write to conf/all sets
        conf/default and every device (addrconf_forward_change), changed or not."""
        proto = ref.proto
        if ref.entry not in ("all", "default"):
            device = self.device_of(ref.registration)
            if device is not None:
                device.forwarding[proto] = value
            return
        old = self.forwarding.get((proto, ref.entry))
        self.forwarding[(proto, ref.entry)] = value
        if ref.entry == "default" or (proto == "ipv4" and old is not None and old == value):
            return
        propagates = proto == "ipv6" or (old is not None and value is not None)   # else: maybe
        targets = [(self.forwarding, (proto, "default"))] + [(d.forwarding, proto) for d in self.devices.values()]
        for table, key in targets:
            if propagates or table.get(key) == value:
                table[key] = value
            else:
                table[key] = None

    def forget_forwarding(self):
        """Something the model does not follow may have written any of them."""
        self.forwarding = {key: None for key in self.forwarding}
        for device in self.devices.values():
            device.forwarding = {proto: None for proto in PROTOCOLS}

    def die(self):
        """The last task left: cleanup_net will unregister everything, at some point."""
        self.dying = True
        for registration in list(self.fixed.values()) + list(self.dirs.values()):
            registration.state = "maybe"
        for device in self.devices.values():
            for registration in device.tables.values():
                registration.state = "maybe"
            if device.peer is not None and not device.peer.netns.dying:
                device.peer.uncertain = True      # veth_dellink takes the peer along
                for registration in device.peer.tables.values():
                    registration.state = "maybe"


@dataclass(frozen=True, eq=False)
class CtlRef:
    """Where in /proc/sys a node is, and the registration it is bound to."""
    level: str                    # sys | net | proto | tabledir | table | leaf | other
    netns: NetNamespace | None = None
    proto: str = ""
    tabledir: str = ""
    entry: str = ""               # all | default | device name
    registration: Registration | None = None
    leaf: str = ""


def table_profile_key(ref: CtlRef) -> str:
    if ref.entry in ("all", "default"):
        return f"{ref.proto}_{ref.tabledir}_{ref.entry}"
    return f"{ref.proto}_{ref.tabledir}_dev"


def grab(registration: Registration | None) -> str | None:
    """sysctl_head_grab: None when usable, else the result the op must give."""
    if registration is None or registration.state == "alive":
        return None
    return "ENOENT" if registration.state == "dead" else "maybe"


def listing_alternatives(certain: list[str], maybe: list[str]) -> str | None:
    """Every listing a correct kernel may give when some names may already be gone."""
    if len(maybe) > MAX_MAYBE:
        return None
    options = []
    for count in range(len(maybe) + 1):
        for present in combinations(sorted(maybe), count):
            options.append("ok:" + ",".join(sorted(certain + list(present))))
    return " | ".join(options)
