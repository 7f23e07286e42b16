"""Frames over asyncio TCP: peer links carrying Raft messages, request/response RPC."""
