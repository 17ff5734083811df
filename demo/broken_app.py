"""A deliberately broken WSGI app: importing it fails, as a site with a bug would.

The demo uses it to show what a visitor sees then: a 502 page that says the app failed to
start, at once, with no restart loop.
"""
raise RuntimeError("this app is broken on purpose (Herald demo)")
