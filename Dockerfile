# One image for person, score, gateway and the migrate job; docker-compose.yml
# chooses the command for each.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The lock goes in before the code so a code change does not reinstall every
# dependency. setuptools stays below 82: nameko's CLI imports pkg_resources,
# which 82 removed, and pip freeze leaves setuptools out of the lock.
COPY requirements.lock ./
RUN pip install --no-cache-dir "setuptools<82" -r requirements.lock

# The code stays owned by root so the service user cannot rewrite it.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
COPY . .
USER app

# Harmless on its own; every compose service sets its own command.
CMD ["nameko", "--help"]
