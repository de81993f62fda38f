"""The adapters: the MCP server, its HTTP transport, the command line, the demo and the scripted agent."""
