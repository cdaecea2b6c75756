"""The connector's PostgreSQL backend: the store (``store``, ``store_sends``), its schema
(``schema``), the group-commit writer (``writer``) and the cross-instance events (``events``)
that let several connector processes share one database.
"""
