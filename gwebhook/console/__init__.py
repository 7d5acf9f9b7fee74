"""
The console (docs/reference.md 11): incidents, samples, deliveries, health
and a mapping workbench in the browser, served by the daemon under
``/console/`` whenever API tokens are configured.  Plain HTML, CSS and
JavaScript modules in ``static/``, no build step and nothing from another
origin; the data comes from the read API with a session.
"""
