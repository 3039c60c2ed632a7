from msearchd.daemon import main

main()
