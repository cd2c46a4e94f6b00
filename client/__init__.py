"""dcam.client: pushes production-line images through Triton (`dcam-client`); never imports
torch. Reads image folders; writes results (.jsonl or .csv) and optional heatmap PNGs."""
