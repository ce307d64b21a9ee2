description = "a drop-in written as a file, not a folder"
