"""Transport: WebRTC (aiortc) between the browser and the conversation pipeline."""
