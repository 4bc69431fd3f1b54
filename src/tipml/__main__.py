from tipml.cli import main

main()
