# sidecar: the proxy, the dev control plane (`sidecar xds-server`) and proxy-init in one image.
#
#   docker build -t sidecar .
#   docker run -e XDS_ADDRESS=istiod.istio-system.svc:15010 sidecar     # bootstrap from env, run
#   docker run -v $PWD/envoy.yaml:/etc/envoy.yaml sidecar -c /etc/envoy.yaml
#   docker run --network container:APP --user 0 --cap-add NET_ADMIN --cap-add NET_RAW \
#       --entrypoint proxy-init sidecar                                  # capture rules
#
# See docs/docker-compose.md.

ARG PYTHON=python:3.12-slim-bookworm

# Build stage: installs the project as the README does, compiling the hot path with mypyc
# (needs a C compiler; the Python headers come with the official image).
FROM ${PYTHON} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY config ./config
COPY filters ./filters
COPY sidecar ./sidecar
RUN python -m venv /opt/sidecar \
    && /opt/sidecar/bin/pip install --no-cache-dir . \
    && /opt/sidecar/bin/python -c "from sidecar import native; assert native.activate() == 'compiled', native.state"

# Runtime stage: no compiler; iptables for proxy-init.
FROM ${PYTHON}
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 istio-proxy \
    && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin istio-proxy
COPY --from=build /opt/sidecar /opt/sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1
# UID 1337 is what proxy-init's rules exempt (-u 1337): the proxy's own connections must not
# be captured again. proxy-init itself needs root and NET_ADMIN (run it with --user 0).
USER 1337:1337
WORKDIR /tmp
# admin (loopback only) 15000, outbound/inbound capture 15001/15006, readiness 15021, metrics 15090
EXPOSE 15001 15006 15021 15090
ENTRYPOINT ["sidecar"]
# A bootstrap from the environment (XDS_ADDRESS, POD_NAME, ...), then the proxy on it.
CMD ["bootstrap", "--run"]
