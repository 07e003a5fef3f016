from sqlstream.cli import main

main()
