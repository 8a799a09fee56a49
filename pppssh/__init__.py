"""pppssh: a PPP-over-SSH VPN between two sites, in the tradition of the VPN PPP-SSH HOWTO."""

__version__ = "0.1.0"
