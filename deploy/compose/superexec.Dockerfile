# The image that runs FedMuscle's ServerApp and ClientApps: Flower's official SuperExec image
# plus this project's dependencies (the SuperLink runs with
# --disable-runtime-dependency-installation, so nothing is installed at run time).
# NOT BUILT HERE: this machine has no Docker engine.
#   docker build -f deploy/compose/superexec.Dockerfile -t fedmuscle-superexec:1.39.0 .
FROM flwr/superexec:1.39.0
WORKDIR /app
COPY --chown=app:app pyproject.toml constraints.txt README.md ./
COPY --chown=app:app fedmuscle_flwr ./fedmuscle_flwr
COPY --chown=app:app server_app ./server_app
COPY --chown=app:app client_app ./client_app
RUN python -m pip install --no-cache-dir -c constraints.txt .
