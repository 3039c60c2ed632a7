from msearchctl.app import main

main()
