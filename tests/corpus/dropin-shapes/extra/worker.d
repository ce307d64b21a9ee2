description = "also a file"
