"""`dsv4setup top`: a live view of one server from its /metrics and /health.

- scrape.py: one scrape (/health status, /metrics parsed with prometheus_client)
- model.py: the `dsv4setup.top/1` document of the interval between two scrapes
- render.py: the rich screen of a document (80 columns, no colour needed)
- watch.py: where the server is, and the scrape loop
"""
