# The chaos image: every role of docker-compose.yml (origin, HAProxy, agents, collectors,
# Locust workers, the controller) runs from it; the service's command picks the role.
#
# Runs as the unprivileged user `chaos` unless a service says otherwise. Only the agents and
# the collectors run as root, with every capability dropped except the ones they need
# (see docker-compose.yml and README "docker compose").
FROM python:3.11-slim-bookworm

# haproxy: the proxy under test; nftables: the agents' nft-filter/nft-loss faults;
# iproute2: `ip` for inspection inside the containers. Nothing else from Debian.
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy nftables iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 chaos \
    && install -d -o chaos -g chaos /app/runs

WORKDIR /app
# Wheels in deploy/wheels/ are used first; without network access to PyPI, build them on a
# host that has it (`pip wheel -w deploy/wheels . setuptools wheel`) and build the image with
# `--build-arg PIP_NO_INDEX=1` (README "docker compose").
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/tmp/wheels
COPY deploy/wheels/ /tmp/wheels/
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))\
['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY chaos ./chaos
COPY locustfiles ./locustfiles
COPY deploy/haproxy ./deploy/haproxy
COPY deploy/scenarios ./deploy/scenarios
# Editable: chaos finds locustfiles/ next to its package, as in a checkout.
RUN pip install --no-cache-dir --no-deps -e . && python -m chaos --help >/dev/null

ENV PYTHONUNBUFFERED=1
USER chaos
CMD ["chaos", "--help"]
