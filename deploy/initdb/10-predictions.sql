-- The app's prediction log gets its own database beside MLflow's (POSTGRES_DB=mlflow); fruitlab serve creates the
-- table on start. Runs once, when the postgres volume is first initialised.
CREATE DATABASE predictions OWNER fruitlab;
