"""Gradio demo (one tab per task, plus compression); calls tasks.pipeline only."""
