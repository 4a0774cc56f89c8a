# Stands in for python:3.11-slim-bookworm, which cannot be pulled on the test machines:
# Debian bookworm's Python 3.11 in a venv whose python and pip come first on PATH, as the
# official image's /usr/local/bin does. The project's Dockerfile builds on it unchanged.
FROM local/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]
