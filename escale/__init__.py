"""escale: keep a folder in sync across machines through an encrypted mailbox relay."""
__version__ = "1.0.0.dev0"
