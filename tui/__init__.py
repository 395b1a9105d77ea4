"""Terminal front ends: the command line, the headless reporter and the dashboard."""
