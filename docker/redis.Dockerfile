# Redis for docker-compose.cpu.yml: Debian's redis-server on the local Debian base, for a host
# that reaches Debian's package mirror but no image registry (production pulls the official
# image instead; see docker-compose.yml).
#
#   docker build -f docker/redis.Dockerfile -t memserve-redis:7.0.15-bookworm .
#
# BASE_IMAGE: a Debian bookworm image (docker/build-base.sh makes memserve-base:bookworm).
# bookworm ships Redis 7.0.15 for its lifetime, hence the tag.
ARG BASE_IMAGE=memserve-base:bookworm

FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive

# The redis user made first, with a fixed uid/gid (the package's postinst keeps an existing
# one): USER can then be numeric like the other images', and the volume's files get a
# predictable owner. Debian's archive keeps only the newest build of a package (security
# fixes replace it), so an exact `=version` pin would make the image unbuildable later.
# hadolint ignore=DL3008
RUN groupadd --system --gid 10002 redis \
 && useradd --system --uid 10002 --gid 10002 --home-dir /var/lib/redis --no-create-home \
      --shell /usr/sbin/nologin redis \
 && apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data \
 && chown 10002:10002 /data

# Redis needs no root: its port is above 1024 and it writes only /data.
USER 10002:10002
WORKDIR /data
EXPOSE 6379

HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]

# Without a config file Redis listens on every interface but, in protected mode, answers only
# loopback; the other containers of the compose network must reach it (the official image
# turns protected mode off the same way). Nothing publishes its port on the host.
CMD ["redis-server", "--protected-mode", "no"]
