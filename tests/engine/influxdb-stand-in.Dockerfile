# Stands in for influxdb:2.7 (not packaged in Debian, cannot be pulled here): Debian's
# victoria-metrics, which accepts the InfluxDB v2 write API, on InfluxDB's port and volume
# path, with an `influx ping` (the compose healthcheck) that asks its /health.
FROM local/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends victoria-metrics \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY stand-in-files/influx /usr/local/bin/influx
CMD ["/usr/bin/victoria-metrics", "-httpListenAddr=:8086", "-storageDataPath=/var/lib/influxdb2", \
     "-loggerLevel=WARN"]
