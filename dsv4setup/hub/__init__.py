"""Talking to the Hugging Face hub (shared by the download and checkpoint steps): endpoint, token, errors."""
