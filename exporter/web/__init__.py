"""The HTTP surface: the app factory and its background resources (app.py), typed app keys
(keys.py), the pages (pages.py) and the admin API (admin/)."""
