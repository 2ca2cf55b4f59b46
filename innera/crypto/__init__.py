"""Envelope encryption of journal content.

- ``keyring``: master encryption keys (MEK) by version, and the key provider interface;
- ``data_keys``: one random data key (DEK) per user, stored only wrapped by a MEK;
- ``entry_cipher``: entry content sealed with the user's DEK, bound to the entry and user.
"""
