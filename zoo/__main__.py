from zoo.list import main

main()
