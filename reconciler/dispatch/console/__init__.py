"""The web console under /ui/ (docs/console.md): server-rendered pages over the API's
authorization, a session per sign-in, and the New webhook form."""
