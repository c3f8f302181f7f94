"""The streamfan gateway: WebSocket fan-out and replay of Redis event streams."""
