# The service image the Helm chart runs (`python -m api`: HTTP_SERVER gunicorn or granian, one worker owning RocksDB).
# Not built in CI here: this machine has no Docker engine.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contacts_streams ./contacts_streams
COPY api ./api
COPY contacts_cli ./contacts_cli
COPY schemas ./schemas
RUN pip install --no-cache-dir -e . && useradd --uid 1000 --create-home contacts \
    && mkdir -p /var/lib/contacts-streams && chown contacts /var/lib/contacts-streams
USER contacts
ENV STATE_DIR=/var/lib/contacts-streams PORT=8080 LOG_FORMAT=json MALLOC_ARENA_MAX=2
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["python", "-m", "api"]
