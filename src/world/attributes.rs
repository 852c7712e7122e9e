//! What a scene is made of: shapes, colours, sizes, counts, background textures and drawing
//! styles, each with the words captions use for it.
//!
//! Some values are *held out* of pretraining (`in_pretraining() == false`): downstream tasks
//! use them to test class names and domains the model never saw.

/// Declares a fieldless enum with its caption word and whether pretraining sees it.
macro_rules! attribute {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal, $seen:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The word captions use.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),* }
            }

            /// Whether pretraining images and captions ever contain this value.
            pub fn in_pretraining(self) -> bool {
                match self { $($name::$variant => $seen),* }
            }

            /// The values pretraining uses.
            pub fn seen() -> Vec<$name> {
                Self::ALL.iter().copied().filter(|v| v.in_pretraining()).collect()
            }

            /// Looks a value up by its caption word.
            pub fn from_word(word: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.word() == word)
            }
        }
    };
}

attribute!(
    /// The object drawn.
    Shape {
        Circle => "circle", true;
        Square => "square", true;
        Triangle => "triangle", true;
        Cross => "cross", true;
        Ring => "ring", true;
        Diamond => "diamond", true;
        Bar => "bar", true;
        Star => "star", false;
        Hexagon => "hexagon", false;
        Heart => "heart", false;
        Crescent => "crescent", false;
    }
);

attribute!(
    /// The object's colour.
    Colour {
        Red => "red", true;
        Green => "green", true;
        Blue => "blue", true;
        Yellow => "yellow", true;
        Purple => "purple", true;
        Orange => "orange", true;
        White => "white", true;
        Black => "black", true;
        Pink => "pink", false;
        Teal => "teal", false;
        Brown => "brown", false;
    }
);

attribute!(
    /// The object's size.
    Size {
        Small => "small", true;
        Large => "large", true;
    }
);

attribute!(
    /// The background pattern. Wavy, brick and grid form the held-out texture family.
    Texture {
        Plain => "plain", true;
        Striped => "striped", true;
        Dotted => "dotted", true;
        Checkered => "checkered", true;
        Wavy => "wavy", false;
        Brick => "brick", false;
        Grid => "grid", false;
    }
);

attribute!(
    /// How the object is drawn. Sketches (dashed, wobbly outlines) are a held-out style.
    Style {
        Filled => "solid", true;
        Outlined => "outlined", true;
        Sketch => "sketched", false;
    }
);

impl Shape {
    /// The plural captions use.
    pub fn plural(self) -> String {
        match self {
            Shape::Cross => "crosses".into(),
            s => format!("{}s", s.word()),
        }
    }
}

impl Colour {
    /// The nominal RGB value; rendering jitters it a little.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [215.0, 35.0, 35.0],
            Colour::Green => [40.0, 170.0, 55.0],
            Colour::Blue => [40.0, 70.0, 215.0],
            Colour::Yellow => [240.0, 215.0, 40.0],
            Colour::Purple => [135.0, 55.0, 185.0],
            Colour::Orange => [245.0, 135.0, 25.0],
            Colour::White => [245.0, 245.0, 245.0],
            Colour::Black => [20.0, 20.0, 20.0],
            Colour::Pink => [250.0, 140.0, 190.0],
            Colour::Teal => [20.0, 150.0, 150.0],
            Colour::Brown => [130.0, 80.0, 35.0],
        }
    }
}

/// The number words captions use for 1, 2 and 3 objects.
pub const COUNT_WORDS: [&str; 3] = ["one", "two", "three"];
