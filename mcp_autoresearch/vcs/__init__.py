"""Git: every git operation the server performs, and what a run could plant in git's own files."""
