"""The integration suite against real programs: see conftest.py and run.sh."""
