"""Journal entries: data access and keyset cursors (``entries``), and the full-text search
scan over the decrypted entries of one user (``search``).

Entry content (title, body, tags, mood) is sealed per row with the user's data key
(``innera/crypto/entry_cipher.py``); PostgreSQL only ever sees ciphertext and timestamps, so
listing pages and searching both decrypt in the application.
"""
