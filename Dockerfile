# One image for every luxor-etl process (migrate, worker, beat, exporter, simulate, status):
#   docker build -t luxor-etl:local .
#   docker run --rm luxor-etl:local --help
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
COPY models ./models
COPY migrations ./migrations
RUN pip install .


FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv

RUN useradd --system --create-home --home-dir /home/luxor --uid 10001 luxor
USER luxor
# A writable working directory for Celery beat's schedule file; the code runs from the venv.
WORKDIR /home/luxor

EXPOSE 9808 8099
ENTRYPOINT ["luxor-etl"]
CMD ["--help"]
