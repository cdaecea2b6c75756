"""The operator page (SPEC 8.5): state history (``history``, ``wakes``, ``recorder``), the
overview document (``overview``) and its server-rendered page (``page``, ``templates/``)."""
