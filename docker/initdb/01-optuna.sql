-- A second database on the same server for Optuna's studies.
CREATE DATABASE optuna OWNER study;
