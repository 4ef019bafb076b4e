function main()
  print("unfinished"
end
