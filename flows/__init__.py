"""Prefect flows for slic: scheduling, retries, placement and artifacts; no ML logic here."""
